# sonm-p2p: the hub, the miner and the client in one image. Built by `make image`
# (scripts/build-image.sh), which makes the base and the wheels this build installs offline.
#   docker run -p 10001:10001 -p 10002:10002 -p 3478:3478/udp -p 3479:3479/udp sonm-p2p sonmhub
#   docker run --net host -v /var/run/docker.sock:/var/run/docker.sock sonm-p2p sonmminer -h HUB:10002
ARG BASE=sonm-base/bookworm-python:latest

FROM ${BASE} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/sonm \
 && /opt/sonm/bin/pip install -q --no-index --no-compile --find-links /wheels sonm-p2p \
 && /opt/sonm/bin/python -m compileall -q /opt/sonm/lib \
 && rm -rf /root/.cache

FROM ${BASE}
COPY --from=build /opt/sonm /opt/sonm
ENV PATH=/opt/sonm/bin:$PATH SONM_HOME=/var/lib/sonm PYTHONUNBUFFERED=1
VOLUME /var/lib/sonm
EXPOSE 10001 10002 3478/udp 3479/udp
CMD ["sonmhub"]
