# Catwalk platform image: the same steps `make run` performs, for Fly.io.
# Stage 1 builds the virtual environment; stage 2 is a slim, non-root runtime.
FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.13-slim
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
