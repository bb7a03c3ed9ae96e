"""The front end: text → syntax tree → expanded graph.

`parser` (Lark, with the grammar in grammar/cnndsl.lark) makes the syntax tree of
`ast`; `expand` calls the blocks and unrolls the repetitions into a graph with one
node per layer; `spec` reads `.yaml` / `.cnn` files and inline text into a `Spec`,
with `yaml_spec` keeping every YAML value's place in the file for diagnostics.
"""
