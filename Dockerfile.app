# The load app and the load generator. The build commands are the ones
# `make build` runs (same flags).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY app/ app/
COPY cmd/loadgen/ cmd/loadgen/
COPY pkg/loadgen/ pkg/loadgen/
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/app ./app && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/loadgen ./cmd/loadgen

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/app /app
COPY --from=build /out/loadgen /loadgen
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/app"]
