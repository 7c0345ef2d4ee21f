"""The planner: candidate segments as a DAG per linear run (:mod:`.candidates`), the integer program
(:mod:`.solver`) and an exact DP cross-check (:mod:`.dp`), the :class:`~dsa.planner.planner.Planner`
(:mod:`.planner`), the accuracy/speed frontier (:mod:`.pareto`) and its figure (:mod:`.plot`). No torch."""
