"""What an analysed graph becomes: `torch_fx` compiles it into a `torch.fx.GraphModule`
(with the few extra modules of `modules`). Exporters and drawing belong here too.
"""

# The weight initialisations `torch_fx.initialize` knows; here, torch-free, for the settings.
INIT_SCHEMES = ("default", "xavier", "kaiming")
