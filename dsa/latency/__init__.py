"""Where every predicted millisecond comes from: the network's ops as roofline ops (:mod:`.ops`), cost models
(:mod:`.costs`: roofline, or measured times from a profile), measured items of a profile (:mod:`.measured`),
whole-network evaluation (:mod:`.evaluate`) and the choice of cost model from --gpu/--profile (:mod:`.resolve`).
No torch: a cached analysis is priced without it."""
