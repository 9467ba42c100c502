# fiveplane, plus the e2e test servers and the example agent (one image for every service of
# docker-compose.yml).
#
#   docker build -t fiveplane .
#   docker run --rm -p 127.0.0.1:8080:8080 -v fiveplane-certs:/app/certs fiveplane
#
# No CA is baked in: the proxy creates its CA in /app/certs (mount a volume there to keep it)
# on first start. Only the sources are copied, never a local certs/, .venv/ or state directory.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# the package first, so the dependency layer survives edits to tests and policies;
# the [test] extra brings the test servers' dependencies (mcp, uvicorn, starlette)
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY addons ./addons
RUN pip install -e '.[test]'

COPY policies ./policies
COPY tests ./tests
COPY examples ./examples

# an unprivileged user; /app/certs and the state directory are where the volumes go (a new
# named volume takes over this ownership, so the proxy can write its CA and evidence there)
RUN useradd --system --uid 10001 --home-dir /app --no-create-home fiveplane \
    && mkdir -p /app/certs /var/lib/fiveplane \
    && chown fiveplane:fiveplane /app/certs /var/lib/fiveplane
USER fiveplane

EXPOSE 8080
CMD ["python", "-m", "proxy", "run", "--policy", "policies/default.yaml", \
     "--listen", "0.0.0.0:8080", "--certs", "/app/certs", "--state-dir", "/var/lib/fiveplane"]
