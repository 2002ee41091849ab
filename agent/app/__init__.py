"""The composition root: the only agent package that imports adapters.

It wires a site file to drivers, price sources, the MQTT link and the OpenADR VEN around the
service shell (agent.service), and holds the `gridflex` sub-commands (agent.app.commands).
"""
