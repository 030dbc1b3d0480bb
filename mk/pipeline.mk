##@ Staged pipeline (issue 11)
.PHONY: test-pipeline-full
test-pipeline-full: $(STAMP) services ## 30,000 raw records through preprocess → features → score, one SIGKILL per stage (slow)
	$(PYTEST) -s -m slow tests/integration/test_staged_pipeline.py $(PYTEST_ARGS)
