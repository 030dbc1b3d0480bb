# creditstream — local demo and cluster observation (included by the Makefile).
# `make demo` needs RabbitMQ on localhost:5672 (the demo says how to start one if it is missing)
# and, for queue depth including unacked messages, the management plugin on :15672.
# NOTE: the broker password reaches `observe` through the environment, never the command line.

DEMO_ARGS ?=
RUNS_DIR ?= runs
RELEASE ?= creditstream
NAMESPACE ?= creditstream
RABBITMQ_SVC ?= $(RELEASE)-rabbitmq
RABBITMQ_SECRET ?= $(RABBITMQ_SVC)
RABBITMQ_USER ?= creditstream
OBSERVE_ARGS ?=
MGMT_LOCAL_PORT ?= 15672

##@ Demo
.PHONY: demo
demo: $(STAMP) ## Whole platform on this machine: 2 bursts at 500 records/s, local KEDA rule, run folder in runs/ (~2.5 min)
	$(BIN)/creditstream demo --runs-dir $(RUNS_DIR) $(DEMO_ARGS)

.PHONY: demo-quick
demo-quick: $(STAMP) ## A shorter demo (2 x 5000 records, 30 s pause)
	$(BIN)/creditstream demo --runs-dir $(RUNS_DIR) --first-burst 5000 --second-burst 5000 \
	  --pause 30 $(DEMO_ARGS)

.PHONY: demo-plot
demo-plot: $(STAMP) ## Regenerate docs/images/demo.png (and docs/images/demo-timeline.csv) from a real run
	rm -rf .cache/demo-plot
	$(BIN)/creditstream demo --runs-dir .cache/demo-plot --no-dashboard $(DEMO_ARGS)
	run=$$(ls -d .cache/demo-plot/*/ | tail -n 1); \
	  cp "$${run}timeline.png" docs/images/demo.png; \
	  cp "$${run}timeline.csv" docs/images/demo-timeline.csv; \
	  cp "$${run}summary.md" docs/images/demo-summary.md; \
	  echo "docs/images/demo.png from $${run}"

.PHONY: observe-local
observe-local: $(STAMP) ## creditstream observe on the current kube context, management API port-forwarded
	@command -v kubectl >/dev/null || { echo "kubectl not found"; exit 1; }
	password=$$(kubectl -n $(NAMESPACE) get secret $(RABBITMQ_SECRET) \
	  -o jsonpath='{.data.rabbitmq-password}' | base64 -d); \
	kubectl -n $(NAMESPACE) port-forward svc/$(RABBITMQ_SVC) $(MGMT_LOCAL_PORT):15672 >/dev/null & \
	pf=$$!; trap 'kill $$pf' EXIT; sleep 2; \
	CREDITSTREAM_MANAGEMENT_URL="http://$(RABBITMQ_USER):$${password}@localhost:$(MGMT_LOCAL_PORT)/" \
	  $(BIN)/creditstream observe --release $(RELEASE) -n $(NAMESPACE) $(OBSERVE_ARGS)
