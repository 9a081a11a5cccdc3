"""The d and g study behind `growjax sweep` (entry: `growjax.growth.sweep.run`), one
module per concern: `grid` (the runs, their configs, steps and FLOPs at equal budget),
`jobs` (how many at a time), `runner` (training them, in this process or as children),
`analysis` (savings, best d and g, the law fit), `report` (printed and JSON summary)
and `plots`. It orchestrates and analyses; training is `stages.run`'s, the speedup
arithmetic `speedup`'s, the fit `law`'s and the equal-FLOPs rule `budget`'s.
"""
