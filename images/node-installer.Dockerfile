# wasmkube node installer, with the shim it installs beside it (its default --shim) and
# Debian's static busybox for the restart path: `nsenter -t 1 ... systemctl restart`,
# `chroot /host /etc/wasmkube/restart-containerd` (hosts without systemd) and `sh -c` for
# --restart-cmd. `bin/` in the context holds busybox and the relative symlinks sh, nsenter and
# chroot -> busybox; COPY of a directory keeps symlinks, so Docker and
# `wasmkube image build` give the same files.
# Build context: `scripts/images.sh --context DIR`; then
# `docker build -f images/node-installer.Dockerfile -t docker.io/wasmkube/node-installer:0.1.0 DIR`.
FROM scratch
COPY wasmkube-node-installer containerd-shim-wasmkube-v1 /usr/local/bin/
# The wasm check module: before reporting a node ready, the installer runs it (a local file,
# `--check-module`) in a container with the wasmkube handler's runtime; also `check --repeat N`.
COPY check.wasm /usr/local/share/wasmkube/check.wasm
COPY bin/ /bin/
# Root: it patches the host's containerd config and restarts containerd.
USER 0:0
ENTRYPOINT ["/usr/local/bin/wasmkube-node-installer"]
LABEL org.opencontainers.image.title="wasmkube node installer" \
      org.opencontainers.image.source="https://github.com/wasmkube/wasmkube" \
      org.opencontainers.image.licenses="Apache-2.0"
