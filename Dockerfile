# Chatify as a container: `docker build -t chatify .`, then
# `docker run -p 8000:8000 -v chatify-data:/data chatify` (see docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    SQLITE_PATH=/data/chatify.db

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code is root's and read-only to the service; only /data (the SQLite file) is its own.
COPY api/ api/
COPY services/ services/
COPY templates_seed/ templates_seed/
RUN groupadd --system --gid 10001 chatify \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin chatify \
    && mkdir /data \
    && chown 10001:10001 /data
# Numeric, so a runtime that checks "not root" (Kubernetes' runAsNonRoot) can tell.
USER 10001:10001
VOLUME ["/data"]

# Documentation only: the service listens on $PORT (Render and Heroku-style hosts set it).
EXPOSE 8000
# The slim image has no curl; Python asks /health on whatever PORT the service was given.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]

# The Procfile's web: line. Exec form: python is PID 1 and gets SIGTERM, so turns in flight
# finish and are stored before it exits (give it LLM_TIMEOUT_SECONDS + 5 s to stop).
CMD ["python", "-m", "api"]
