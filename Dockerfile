# One image with every Leasehold binary, on a static base (the binaries are static Go).
# On a machine with a Docker engine:  docker build -t leasehold:dev .
# Without one (this repository's own test ground): hack/images.sh leasehold builds the same
# layout with go-containerregistry (hack/ociimage), for linux/amd64 and linux/arm64 in one index.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# docker build --build-arg VERSION=$(git describe --tags --always --dirty) .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/leasehold/leasehold/internal/version.version=${VERSION}" -o /out/ ./cmd/...

FROM scratch
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/leasehold-webhook"]
