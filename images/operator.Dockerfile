# wasmkube operator: one static binary, non-root.
# Build context: `scripts/images.sh --context DIR` lays it out (static binaries, busybox);
# then `docker build -f images/operator.Dockerfile -t docker.io/wasmkube/operator:0.1.0 DIR`.
# `wasmkube image build` interprets this file too (FROM scratch, COPY, config only).
FROM scratch
COPY wasmkube-operator /usr/local/bin/wasmkube-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wasmkube-operator"]
LABEL org.opencontainers.image.title="wasmkube operator" \
      org.opencontainers.image.source="https://github.com/wasmkube/wasmkube" \
      org.opencontainers.image.licenses="Apache-2.0"
