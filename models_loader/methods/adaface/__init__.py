"""AdaFace (adaface-neurips/adaface, askerlee/AdaFace-dev): ArcFace embedding -> Arc2Face text encoder ->
prompt inverter -> N identity tokens in the text-input space, inserted into the prompt as inline tensor
tokens (:mod:`...textspace`). No UNet change: composes with ControlNet and AnimateDiff.
"""
