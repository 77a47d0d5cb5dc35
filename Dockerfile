# syntax=docker/dockerfile:1
# The one MagicPixels image: every Deployment runs it as `magicpixels serve <service>`, the
# migration Job as `magicpixels migrate` (docs/operations.md).
#   docker build -t ghcr.io/magicpixels/magicpixels:0.1.0 .

# The exact release, the same in both stages: the virtual environment is moved between them.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/magicpixels
WORKDIR /src
# The pinned runtime dependencies first (wheels only: nothing compiles), in a layer of their
# own that a change of the sources leaves cached.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > runtime.txt \
 && /opt/magicpixels/bin/pip install --only-binary=:all: -c requirements.lock -r runtime.txt
COPY setup.py README.md ./
COPY src src
COPY services services
COPY gateway gateway
COPY sdk/python/src sdk/python/src
RUN /opt/magicpixels/bin/pip install --no-deps . \
 && /opt/magicpixels/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
# A fixed, unprivileged uid and gid: the pods' securityContext names the same (runAsUser).
RUN groupadd --system --gid 10001 magicpixels \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin magicpixels \
 && install --directory --owner 10001 --group 10001 --mode 0700 /data
COPY --from=build /opt/magicpixels /opt/magicpixels
ENV PATH=/opt/magicpixels/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MP_DATA_DIR=/data \
    MP_LOG_FORMAT=json
USER 10001:10001
WORKDIR /data
# The gateway's HTTP port and every gRPC service's, as the Kubernetes manifests set them.
EXPOSE 8080 50051
ENTRYPOINT ["magicpixels"]
CMD ["serve", "gateway"]
