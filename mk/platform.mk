# Kubernetes platform targets (included by the Makefile). Helm comes from PyPI wheels
# (scripts/fetch_helm.py), checkov from its own venv (scripts/fetch_tools.py), both in .tools/.
PLATFORM_PY ?= .venv/bin/python
PLATFORM_PYTEST ?= .venv/bin/pytest
HELM        ?= .tools/helm-3/helm
HELM4       ?= .tools/helm-4/helm
KIND        ?= kind
KUBECTL     ?= kubectl
CLUSTER     ?= creditstream
NAMESPACE   ?= creditstream
RELEASE     ?= creditstream
VALUES      ?= k8s/values/kind.yaml
IMAGE_TAG   ?= dev-$(shell git rev-parse --short HEAD 2>/dev/null || echo local)
CONSUMER_IMAGE ?= creditstream-consumer
PRODUCER_IMAGE ?= creditstream-producer

.PHONY: tools images kind-up keda-install deploy observe undeploy chart-lint chart-test manifests kind-down

tools: ## Fetch helm 3.17 + 4.3 and checkov into .tools/ (idempotent)
	$(PLATFORM_PY) scripts/fetch_tools.py

$(HELM) $(HELM4):
	$(PLATFORM_PY) scripts/fetch_helm.py

images: ## Build the consumer and producer images (tag IMAGE_TAG)
	docker build -f services/consumer/Dockerfile -t $(CONSUMER_IMAGE):$(IMAGE_TAG) .
	docker build -f services/producer/Dockerfile -t $(PRODUCER_IMAGE):$(IMAGE_TAG) .

kind-up: ## Create the kind cluster (pinned Kubernetes 1.34 node image)
	$(KIND) get clusters | grep -qx $(CLUSTER) || $(KIND) create cluster --config k8s/kind-cluster.yaml --wait 120s
	$(KUBECTL) cluster-info --context kind-$(CLUSTER)

kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(CLUSTER)

keda-install: $(HELM) ## Install the pinned KEDA release into namespace keda
	k8s/keda/install.sh $(HELM)

deploy: $(HELM) images ## kind load the images and helm upgrade --install the chart
	$(KIND) load docker-image --name $(CLUSTER) $(CONSUMER_IMAGE):$(IMAGE_TAG) $(PRODUCER_IMAGE):$(IMAGE_TAG)
	$(HELM) upgrade --install $(RELEASE) charts/creditstream -n $(NAMESPACE) --create-namespace \
	  -f $(VALUES) \
	  --set consumer.image.repository=$(CONSUMER_IMAGE),consumer.image.tag=$(IMAGE_TAG) \
	  --set producer.image.repository=$(PRODUCER_IMAGE),producer.image.tag=$(IMAGE_TAG) \
	  --wait --timeout 10m

observe: ## Follow Deployment, HPA, ScaledObject and queue depth (creditstream observe)
	.venv/bin/creditstream observe --release $(RELEASE) --namespace $(NAMESPACE) --context kind-$(CLUSTER)

undeploy: $(HELM) ## Uninstall the release (the kept Secrets and PVCs: see NOTES)
	$(HELM) uninstall $(RELEASE) -n $(NAMESPACE) --wait || true

chart-lint: $(HELM) $(HELM4) ## helm lint --strict (Helm 3 and 4) and hadolint
	for helm in $(HELM) $(HELM4); do \
	  $$helm lint --strict charts/creditstream || exit 1; \
	  for f in charts/creditstream/ci/*.yaml k8s/values/*.yaml; do $$helm lint --strict charts/creditstream -f $$f --quiet || exit 1; done; \
	done
	.venv/bin/hadolint services/consumer/Dockerfile services/producer/Dockerfile

manifests: $(HELM) ## Regenerate k8s/rendered/ (plain manifests for kubectl users)
	$(PLATFORM_PY) scripts/render_manifests.py --helm $(HELM)

chart-test: tools ## Chart tests: lint, schemas, checkov, contract, images, chart-to-process
	$(PLATFORM_PYTEST) tests/chart -m chart
