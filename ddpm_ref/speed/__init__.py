"""How fast the same math runs: the speed switches (:mod:`.perf`: AMP, channels_last, fused AdamW, cuDNN autotuning,
``torch.compile``, CPU threads), the mixed-precision policy (:mod:`.precision`) and the compiler with its fallback
(:mod:`.compiling`). None of them changes what is computed; ``ddpm_ref.bench`` measures what each one buys."""
