##@ Reliability
.PHONY: reliability-report
reliability-report: $(STAMP) ## Write the figures of the last fault runs (.cache/reliability) into docs/reliability.md
	$(PY) -m tests.faults.report
