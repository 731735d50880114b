#!/usr/bin/env bash
# Installs the system packages swift-dlm needs to build and test, when they are missing (Debian / Ubuntu):
# liblmdb-dev (the store), libssl-dev (libcrypto: HMAC-SHA256 of the peer frames; libssl: TLS for TCP clients),
# openssl (the command, which makes the TLS tests' certificates), libdlm-dev (the C library's header and the upstream library its tests compare with),
# corosync's client libraries (the corosync provider), corosync and pacemaker (their tests),
# iproute2 (network namespaces for the partition test), prometheus (promtool, for the metrics test),
# resource-agents (ocf-tester, for the OCF agent's test) and systemd (systemd-analyze, systemd-tmpfiles).
set -euo pipefail
need=()
pkg-config --exists lmdb 2>/dev/null || need+=(liblmdb-dev)
[ -f /usr/include/openssl/evp.h ] && [ -f /usr/include/openssl/ssl.h ] && pkg-config --exists 'libcrypto >= 3' 'libssl >= 3' 2>/dev/null || need+=(libssl-dev)
command -v openssl >/dev/null || need+=(openssl)
# libdlm.h, the header the C library (Sources/CDLM) implements and its tests compile against, and the
# upstream libdlm.so.3 that the compatibility test links an unmodified program with.
[ -f /usr/include/libdlm.h ] && [ -e /usr/lib/"$(uname -m)"-linux-gnu/libdlm.so ] || need+=(libdlm-dev)
# corosync 3's client libraries, for the corosync provider of group services (Sources/CDLMCorosync), and corosync
# itself for its test (Tests/IntegrationTests/CorosyncTests.swift).
pkg-config --exists libcpg 2>/dev/null || need+=(libcpg-dev)
pkg-config --exists libvotequorum 2>/dev/null || need+=(libvotequorum-dev)
pkg-config --exists libcmap 2>/dev/null || need+=(libcmap-dev)
[ -e /usr/lib/"$(uname -m)"-linux-gnu/libcorosync_common.so ] || need+=(libcorosync-common-dev)
command -v corosync >/dev/null || need+=(corosync)
# Pacemaker, which runs dlmd through the OCF agent in Tests/IntegrationTests/PacemakerTests.swift.
command -v pacemakerd >/dev/null || need+=(pacemaker)
command -v crm_mon >/dev/null || need+=(pacemaker-cli-utils)
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v make >/dev/null || need+=(make)
# ip netns and veth links for the partition test (Tests/IntegrationTests/PartitionTests.swift).
command -v ip >/dev/null || need+=(iproute2)
# promtool, which checks the text of `dlmd --metrics` (Tests/IntegrationTests/MetricsTests.swift).
command -v promtool >/dev/null || need+=(prometheus)
# ocf-tester, which runs the OCF resource agent dist/ocf/dlmd against a real dlmd, and systemd-analyze and
# systemd-tmpfiles, which check the unit and the tmpfiles entry in dist/systemd (Tests/IntegrationTests/DistTests.swift).
command -v ocf-tester >/dev/null || need+=(resource-agents)
# xmllint, with which ocf-tester checks the agent's meta-data (only recommended by resource-agents).
command -v xmllint >/dev/null || need+=(libxml2-utils)
command -v systemd-analyze >/dev/null && command -v systemd-tmpfiles >/dev/null || need+=(systemd)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "swift-dlm needs: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
