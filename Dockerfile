# syntax=docker/dockerfile:1
# The image every SageMaker job of a compiled workflow runs: `wf` on a CUDA runtime (training needs
# the GPU libraries; processing jobs ignore them). Jobs start it as `wf worker <kind> ...`
# (docs/cloud.md §5). Build and push: README.md, "Run on AWS".
ARG CUDA_VERSION=12.4.1

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu22.04 AS build
# The AWS SDK crates need Rust 1.94.1 or newer.
ARG RUST_VERSION=1.95.0
# Cargo features of the `wf` package: `gpu` = CUDA training (candle CUDA kernels, cuDNN
# convolutions, NCCL data parallelism); "" builds a CPU-only image.
ARG WF_FEATURES="gpu"
# GPU architecture candle's kernels are compiled for; PTX for 8.0 also JIT-runs on A10G (8.6) and
# H100 (9.0). bf16 needs >= 8.0.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config libnccl2 libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wf --features "${WF_FEATURES}" \
 && install -m 0755 target/release/wf /usr/local/bin/wf

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu22.04
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tar libnccl2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/wf /usr/local/bin/wf
# Plain progress lines (CloudWatch keeps stderr), never a terminal UI.
ENV WF_PLAIN=1
ENTRYPOINT ["wf"]
