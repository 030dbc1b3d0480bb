# A three-node RabbitMQ cluster on this machine (included by the Makefile), from the machine's
# own rabbitmq-server: nodes creditstream-{a,b,c}@localhost, AMQP 5673-5675, management
# 15673-15675, dist 25673-25675, data in $(BROKER_CLUSTER_DIR). The broker on 5672 is untouched.
# The logic lives in services/creditstream/harness/broker_cluster.py (the tests use it too).

BROKER_CLUSTER_DIR ?= /tmp/creditstream-broker-cluster
BROKER_CLUSTER := $(PY) -m creditstream.harness.broker_cluster --base-dir $(BROKER_CLUSTER_DIR)

##@ Broker cluster
.PHONY: broker-cluster-up broker-cluster-down broker-cluster-status test-cluster-faults
broker-cluster-up: $(STAMP) ## Start 3 local RabbitMQ nodes as one cluster; prints CREDITSTREAM_AMQP_URL
	$(BROKER_CLUSTER) up
	$(BROKER_CLUSTER) ctl cluster_status

broker-cluster-down: $(STAMP) ## Stop the local cluster; nothing left running (checked)
	$(BROKER_CLUSTER) down

broker-cluster-status: $(STAMP) ## rabbitmqctl cluster_status of the local cluster
	$(BROKER_CLUSTER) ctl cluster_status

test-cluster-faults: $(STAMP) services ## Cluster fault tests, 30,000 records each (starts and stops the cluster)
	$(PYTEST) tests/faults/test_cluster_faults.py -m slow $(PYTEST_ARGS)
