"""`msl`: masked softmax loss (Wang et al., SIGIR 2025), softmax over the trie-valid next tokens."""

from bearrec.methods import Method
from bearrec.methods.sft import mean_ce_parts

METHODS = (Method("msl", lambda b: mean_ce_parts(b, b.allowed, b.cfg.tau),
                  "softmax over the trie-valid next tokens only, temperature tau (MSL)", sections=("tau",)),)
