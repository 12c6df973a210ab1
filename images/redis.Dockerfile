# Redis for the key-value e2e test and examples/kv-counter: Debian's redis-server with the shared
# libraries it links, laid out by `scripts/images.sh` (ldd of /usr/bin/redis-server).
# `wasmkube image build` interprets this file too (FROM scratch, COPY, config only).
FROM scratch
COPY redis/ /
USER 65532:65532
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"]
LABEL org.opencontainers.image.title="redis-server from Debian bookworm, for wasmkube's tests" \
      org.opencontainers.image.licenses="BSD-3-Clause"
