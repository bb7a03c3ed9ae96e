"""What an analysed graph becomes: `torch_fx` compiles it into a `torch.fx.GraphModule`
(with the few extra modules of `modules`). Exporters and drawing belong here too.
"""
