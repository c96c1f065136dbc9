# syntax=docker/dockerfile:1
# One image for every Swarm process: the Hive, the scheduler, the observer, agent pods and the
# `swarm` CLI (which runs the database migrations). docker-compose.yml picks one with `command:`.

FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SWARM_DATA_DIR=/var/lib/swarm

# A fixed uid, so named volumes (Raft journals) keep one owner across rebuilds. The data dir is
# created here: a fresh named volume mounted on it inherits its ownership. So is the directory
# compose's init service writes the cluster's keys into (swarm/devstack/compose.py): its
# volume is then the user's alone, 0700, and every Swarm container, running as this user,
# reads the part of it that it mounts.
RUN groupadd --system --gid 10001 swarm \
    && useradd --system --uid 10001 --gid swarm --home-dir /var/lib/swarm --create-home \
       --shell /usr/sbin/nologin swarm \
    && install -d -o swarm -g swarm -m 0700 /var/lib/swarm-secrets

RUN python -m venv /opt/venv
WORKDIR /app
COPY . .
# Editable, because the Alembic scripts are found next to the `swarm` package (`migrations/`
# beside it), which a regular install into site-packages would leave behind. The source stays
# owned by root: the services cannot rewrite their own code.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -e . \
    && pip check

USER swarm:swarm
CMD ["swarm", "--help"]
