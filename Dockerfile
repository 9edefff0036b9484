# One image for web, worker and beat; docker-compose.yml picks the command.
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
# A regular install: the package carries sql/ (conveyor.sql). The sources stay out of the working
# directory, so `python -m conveyor` imports the installed package, not a copy without its SQL.
RUN pip install --no-cache-dir . && rm -rf /src && useradd --create-home conveyor
WORKDIR /home/conveyor
USER conveyor
EXPOSE 8000
# Each open websocket holds a gthread thread: size --threads for the sockets one worker serves
# (docs/realtime.md; `conveyor run` uses WEB_THREADS, 1100 by default).
CMD ["gunicorn", "web:create_app()", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "web.gunicorn_worker.GracefulThreadWorker", "--threads", "1100", "--worker-connections", "1200", "--config", "python:web.gunicorn_config"]
