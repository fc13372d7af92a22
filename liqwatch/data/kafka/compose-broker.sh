#!/usr/bin/env bash
# One broker of docker-compose.yml's `production` profile: a node of a three-node KRaft cluster (broker and
# controller, static voters kafka-1..3), as `liqwatch stack up --brokers 3 --auth scram` runs it on the host
# (liqwatch/tools/stack.py, _kafka_properties): SASL_SSL for clients and between brokers (SCRAM users made at
# format time), TLS with certificates on both sides between the controllers, no PLAINTEXT listener; three
# replicas, two in sync for a write.
#
# Environment: NODE_ID (1..3), HOST_PORT (the port published on the host's 127.0.0.1), LISTEN_HOST (the address
# the listeners bind: docker-compose.yml gives the container's every interface; default 127.0.0.1), CLUSTER_ID,
# KAFKA_ADMIN_PASSWORD (the brokers' own user) and LIQWATCH_KAFKA_PASSWORD (the workers' user, `liqwatch`).
# /tls holds ca.pem and broker.pem (`python -m liqwatch.tools.certs`, the kafka-tls service).
set -euo pipefail
LISTEN_HOST="${LISTEN_HOST:-127.0.0.1}"
: "${NODE_ID:?}" "${HOST_PORT:?}" "${CLUSTER_ID:?}" "${KAFKA_ADMIN_PASSWORD:?}" "${LIQWATCH_KAFKA_PASSWORD:?}"

umask 077  # the properties hold the admin password
props=/tmp/server.properties
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${KAFKA_ADMIN_PASSWORD}\";"
cat > "$props" <<EOF
process.roles=broker,controller
node.id=${NODE_ID}
controller.quorum.voters=1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093
controller.listener.names=CONTROLLER
listeners=SASL_SSL://${LISTEN_HOST}:9092,HOST://${LISTEN_HOST}:29092,CONTROLLER://${LISTEN_HOST}:9093
advertised.listeners=SASL_SSL://kafka-${NODE_ID}:9092,HOST://127.0.0.1:${HOST_PORT}
listener.security.protocol.map=SASL_SSL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=${jaas}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=${jaas}
listener.name.host.scram-sha-512.sasl.jaas.config=${jaas}
listener.name.host.scram-sha-256.sasl.jaas.config=${jaas}
ssl.keystore.type=PEM
ssl.keystore.location=/tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=/tls/ca.pem
listener.name.controller.ssl.client.auth=required
log.dirs=/var/lib/kafka/data
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
default.replication.factor=3
min.insync.replicas=2
group.initial.rebalance.delay.ms=0
num.partitions=8
auto.create.topics.enable=false
EOF

# the healthcheck's client (kafka-broker-api-versions.sh --command-config), as the brokers' own user
cat > /tmp/client.properties <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=${jaas}
ssl.truststore.type=PEM
ssl.truststore.location=/tls/ca.pem
EOF

scram=()
for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
  scram+=(--add-scram "${mechanism}=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]"
          --add-scram "${mechanism}=[name=liqwatch,password=${LIQWATCH_KAFKA_PASSWORD}]")
done
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$CLUSTER_ID" -c "$props" "${scram[@]}" >/dev/null
exec /opt/kafka/bin/kafka-server-start.sh "$props"
