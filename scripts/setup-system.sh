#!/usr/bin/env bash
# Install what the local liqwatch stack (`liqwatch stack up`) needs, idempotently:
#   1. Debian packages prometheus + prometheus-alertmanager (binaries only: the
#      stack starts them itself, never through their service units);
#   2. the Kafka 4.0 jars, resolved by Maven from liqwatch/data/kafka/pom.xml into
#      ${LIQWATCH_CACHE:-~/.cache/liqwatch}/kafka-<version>/lib.
# Re-running is cheap: each step is skipped when already done. The marker file
# format matches liqwatch/tools/stack.py (ensure_kafka_jars), so either can fill the cache.
#
#   sudo scripts/setup-system.sh        # or as root, e.g. in CI
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$repo/liqwatch/data/kafka/pom.xml"
cache="${LIQWATCH_CACHE:-$HOME/.cache/liqwatch}"
log() { echo "[setup-system] $*" >&2; }

# --- 1. Prometheus + Alertmanager ------------------------------------------------
if [[ -x /usr/bin/prometheus && -x /usr/bin/prometheus-alertmanager ]]; then
  log "prometheus and alertmanager already installed"
else
  [[ $(id -u) -eq 0 ]] || { log "need root for apt-get (run with sudo)"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(prometheus prometheus-alertmanager)
  log "installing ${pkgs[*]} (apt-get)"
  if ! apt-get install -y --no-install-recommends "${pkgs[@]}"; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update
    apt-get install -y --no-install-recommends "${pkgs[@]}"
  fi
fi

# --- 1b. a Compose client to validate docker-compose.yml (tests only; no Docker engine is needed or installed)
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
  log "a docker compose client is present"
elif [[ $(id -u) -eq 0 ]]; then
  log "installing docker-compose (client only, --no-install-recommends: no engine)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose; }
fi

# --- 2. Kafka jars -------------------------------------------------------------------
for tool in java mvn; do
  command -v "$tool" >/dev/null || { log "$tool not found: install Java 17 and Maven"; exit 1; }
done
pom_sha="$(sha256sum "$pom" | cut -d' ' -f1)"
for version in 4.0.2 4.0.1 4.0.0; do  # same preference order as stack.KAFKA_VERSIONS
  lib="$cache/kafka-$version/lib"
  if [[ "$(cat "$lib/.resolved" 2>/dev/null)" == "$version $pom_sha" ]]; then
    log "Kafka $version jars already in $lib"
    exit 0
  fi
done
for version in 4.0.2 4.0.1 4.0.0; do
  lib="$cache/kafka-$version/lib"
  tmp="$cache/kafka-$version/lib.partial"
  rm -rf "$tmp"
  log "resolving Kafka $version jars with Maven into $lib"
  start=$SECONDS
  if mvn -q -B -Dstyle.color=never -f "$pom" "-Dkafka.version=$version" dependency:copy-dependencies "-DoutputDirectory=$tmp" \
      && [[ -f "$tmp/kafka_2.13-$version.jar" ]]; then
    rm -rf "$lib"
    mv "$tmp" "$lib"
    echo "$version $pom_sha" >"$lib/.resolved"
    log "Kafka $version jars ready ($((SECONDS - start)) s, $(ls "$lib" | wc -l) jars)"
    exit 0
  fi
  log "could not resolve Kafka $version; trying the next version"
done
log "Maven could not resolve any Kafka 4.0.x"
exit 1
