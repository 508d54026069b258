"""Offline work on the cascade: evaluation, calibration, the zoo's derived artifacts and the
router's confidence head. It uses the request-time core (`calibration`) and the models
(`models`); serving (`deployments`) never imports it.

    python -m offline <command>        (the same commands as `python -m calibration <command>`)
"""
