"""Site mapping profiles the mapping-version tests deploy and edit."""

# A site profile for the sender EHR sending DX steps to the station AE title ``{ae}``
# (``.format(ae=...)``); changing ``ae`` is the engineer's typical station change.
DX_STATION = """name: site
extends: default
senders:
  - {{application: EHR}}
stations:
  - name: dx-room
    when: {{modality: DX}}
    ae_title: {ae}
    station_name: DXROOM
"""
