"""One module per pipeline stage; each exposes ``run(ctx: StageContext) -> StageResult``.

Stages never import each other. Modules starting with an underscore are shared helpers.
"""
