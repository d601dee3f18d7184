# Two images from one file:
# - the Catwalk platform (the default, last stage): `docker build .`, the same steps `make run`
#   performs, for Fly.io; a build stage makes the virtual environment, the final stage is a
#   slim, non-root runtime;
# - the Fly runner (`docker build --target runner .`): what each deployment's Fly Machine runs,
#   `python -m mcpgateway.runner` (see mcpgateway/runner.py).

# --- The Fly runner -----------------------------------------------------------------------------
# Node 22 comes from the official image, built for the same Debian release as the runner's.
FROM node:22-bookworm-slim AS node

FROM python:3.13-slim-bookworm AS runner
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The sandbox's tools (mcpgateway/sandbox.py): bubblewrap, slirp4netns, nft, setpriv, mount.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       bubblewrap slirp4netns nftables util-linux mount ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && node --version && npx --version
# uv/uvx for PyPI servers, and what the bridge runs on, at the platform's pinned versions.
COPY requirements.txt /tmp/requirements.txt
RUN grep -E '^(uv|uvicorn|uvloop|httptools)==' /tmp/requirements.txt > /tmp/runner-requirements.txt \
    && pip install -r /tmp/runner-requirements.txt \
    && rm /tmp/requirements.txt /tmp/runner-requirements.txt \
    && uvx --version
# The warm package caches, layered read-only under each sandboxed server's own. Packages named
# in these build arguments are downloaded now with all their dependencies (no install scripts
# run, no builds), so a machine starts their servers without fetching them (docs/benchmarks.md,
# "Fly runner start").
ARG WARM_NPM_PACKAGES=""
ARG WARM_PYPI_PACKAGES=""
RUN cache=/var/lib/catwalk-runner/cache \
    && mkdir -p "$cache/npm" "$cache/uv" \
    && for package in $WARM_NPM_PACKAGES; do \
         npm_config_cache="$cache/npm" npm_config_ignore_scripts=true \
           npm exec --yes --package="$package" -- true || exit 1; \
       done \
    && for package in $WARM_PYPI_PACKAGES; do \
         UV_CACHE_DIR="$cache/uv" uv pip install --no-build --quiet --target /tmp/warm \
           --python /usr/local/bin/python "$package" || exit 1; \
       done \
    && rm -rf /tmp/warm \
    && chmod 700 /var/lib/catwalk-runner \
    && chmod -R a+rwX "$cache"
WORKDIR /app
COPY mcpgateway /app/mcpgateway
EXPOSE 8080
# Runs as root: the sandbox gives the MCP server a uid of its own and never root.
CMD ["python", "-m", "mcpgateway.runner"]

# --- The Catwalk platform (the default image) --------------------------------------------------
FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.13-slim AS platform
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEBUG=False \
    CATWALK_DATA_DIR=/data
RUN groupadd --system catwalk && useradd --system --gid catwalk --home /app catwalk \
    && mkdir -p /data && chown catwalk:catwalk /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=catwalk:catwalk . /app
# collectstatic needs settings to load; these throwaway values never reach a running container.
RUN SECRET_KEY=collectstatic-only-$(python -c "import secrets; print(secrets.token_urlsafe(50))") \
    CATWALK_ENCRYPTION_KEYS=$(python -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())") \
    ALLOWED_HOSTS=build.invalid \
    python manage.py collectstatic --noinput --verbosity 0
USER catwalk
EXPOSE 8080
# uvicorn (uvloop, httptools) serves the MCP route with less CPU per call than daphne; see
# docs/benchmarks.md. daphne works too: `daphne -b 0.0.0.0 -p 8080 catwalk.asgi:application`.
CMD ["uvicorn", "catwalk.asgi:application", "--host", "0.0.0.0", "--port", "8080", \
     "--loop", "uvloop", "--http", "httptools", "--proxy-headers", \
     "--forwarded-allow-ips", "*", "--no-access-log", "--timeout-keep-alive", "75"]
