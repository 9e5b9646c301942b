#!/bin/sh
# /usr/local/bin/tmem-agent: runs the guest agent installed in /opt/tmem-agent.
PYTHONPATH=/opt/tmem-agent${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH
exec python3 -m tmem_agent.cli "$@"
