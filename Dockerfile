# syntax=docker/dockerfile:1
# mlscale: one image, every binary at its root (/modelserver, /adapter,
# /scaler, /activator, /loadgen), plus the seed's iris model at
# /models/iris/model.joblib.
# Manifests pick the binary with `command: [/<binary>]`.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t $REGISTRY/mlscale:$TAG --push .

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# `make build` is the build step, so the image's binaries are built exactly
# as `make build` builds them locally (GOFLAGS_BUILD: -trimpath -ldflags='-s -w'),
# statically, cross-compiled for the target platform. The local cluster
# (`localcluster`) is a development tool and stays out of the image.
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH make build BIN=/out \
 && rm /out/localcluster \
 && mkdir -p /out/models/iris \
 && cp modelserver/xgboost/testdata/model.joblib /out/models/iris/model.joblib

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mlscale" \
      org.opencontainers.image.description="Request-driven autoscaling for ML model servers on Kubernetes: model server, custom/external metrics adapter, KEDA external scaler, activator, load generator" \
      org.opencontainers.image.source="https://github.com/mlscale/mlscale" \
      org.opencontainers.image.url="https://github.com/mlscale/mlscale" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/ /
# distroless's nonroot user; the manifests also set runAsNonRoot.
USER 65532:65532
EXPOSE 9000
ENTRYPOINT ["/modelserver"]
CMD ["--model=/models/iris/model.joblib"]
