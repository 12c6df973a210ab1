# Pause (pod sandbox) image for the local test cluster: a static `pause()` loop
# (gcc -static -O2 tests/harness/assets/pause.c), running as 65535 like registry.k8s.io/pause.
# Build context: `scripts/images.sh --context DIR`; then
# `docker build -f images/pause.Dockerfile -t localhost/wasmkube/pause:0.1.0 DIR`.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
