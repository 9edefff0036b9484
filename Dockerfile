# One image for web, worker and beat; docker-compose.yml and deploy/k8s/ pick the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY conveyor ./conveyor
COPY web ./web
COPY worker ./worker
COPY tasks ./tasks
COPY sql ./sql
COPY beat_schedule.py ./
# A regular install, not editable: the package carries sql/ (conveyor.sql). The sources stay out
# of the working directory, so `python -m conveyor` imports the installed package, not a copy
# without its SQL.
# A fixed numeric uid: Kubernetes' runAsNonRoot can verify only a numeric USER.
RUN pip install --no-cache-dir . && rm -rf /src \
    && groupadd --gid 10001 conveyor && useradd --uid 10001 --gid 10001 --create-home conveyor \
    && mkdir -p /home/conveyor/data/artifacts /home/conveyor/metrics \
    && chown -R conveyor:conveyor /home/conveyor/data /home/conveyor/metrics
# The README's example workflows. CONVEYOR_WORKFLOWS_DIR is absolute, so a changed working
# directory (Kubernetes `workingDir`) still finds them.
COPY --chown=conveyor:conveyor workflows /home/conveyor/workflows
# CONVEYOR_DATA_DIR holds large outputs (artifacts/) when Supabase Storage is not configured.
# The folders exist in the image, owned by conveyor, so a fresh named volume mounted on them is
# writable by that user.
ENV CONVEYOR_WORKFLOWS_DIR=/home/conveyor/workflows \
    CONVEYOR_DATA_DIR=/home/conveyor/data
WORKDIR /home/conveyor
USER 10001:10001
EXPOSE 8000
# Empties PROMETHEUS_MULTIPROC_DIR, when set, before the command starts: files of an earlier
# start (a restarted container keeps a Kubernetes emptyDir) would be summed into every scrape,
# and a new process whose pid matches an old file's would continue its counts. Then `exec`, so
# the command is pid 1 and gets SIGTERM itself.
ENTRYPOINT ["/bin/sh", "-c", "if [ -n \"$PROMETHEUS_MULTIPROC_DIR\" ]; then mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && find \"$PROMETHEUS_MULTIPROC_DIR\" -mindepth 1 -delete; fi; exec \"$@\"", "entrypoint"]
# Each open websocket holds a gthread thread: size --threads for the sockets one worker serves
# (docs/realtime.md; `conveyor run` uses WEB_THREADS, 1100 by default). --graceful-timeout as in
# `conveyor run`: the orchestrator's stop timeout must be longer (docs/operations.md).
CMD ["gunicorn", "web:create_app()", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "web.gunicorn_worker.GracefulThreadWorker", "--threads", "1100", "--worker-connections", "1200", "--graceful-timeout", "20", "--config", "python:web.gunicorn_config"]
