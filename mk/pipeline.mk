##@ Staged pipeline (issue 11)
.PHONY: test-pipeline-full
test-pipeline-full: $(STAMP) services ## 30,000 raw records through preprocess → features → score, one SIGKILL per stage (slow)
	$(PYTEST) -s -m slow tests/integration/test_staged_pipeline.py $(PYTEST_ARGS)

.PHONY: demo-pipeline
demo-pipeline: $(STAMP) ## Staged demo: preprocess/features/score processes, each scaled by the KEDA rule on its own queue (~3 min)
	$(BIN)/creditstream demo --pipeline staged --first-burst 6000 --second-burst 6000 --pause 30 \
	  --rate 400 --max-duration 420 --runs-dir $(RUNS_DIR) $(DEMO_ARGS)
