# The load app, with the load generator beside it (/loadgen), for the demo.
# Built by hack/build.sh, the script `make build` runs.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY hack/build.sh hack/build.sh
COPY app/ app/
COPY cmd/loadgen/ cmd/loadgen/
COPY internal/loadgen/ internal/loadgen/
ARG VERSION=devel
RUN VERSION=${VERSION} hack/build.sh /out ./app ./cmd/loadgen

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/app /app
COPY --from=build /out/loadgen /loadgen
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/app"]
