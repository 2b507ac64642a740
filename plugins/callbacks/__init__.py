"""Training callbacks (see :class:`gan_pipe.context.Callback`).

* :mod:`.ema`: the ``ema`` component, an exponential moving average of the generator, that
  recipes turn on with ``[[callbacks]] name = "ema"``;
* :mod:`.duties`: gan-pipe's own periodic duties (periodic evaluation, checkpoints, the
  progress bar), always on, and :mod:`.frames`: the sample frames. The trainer runs them
  after the recipe's callbacks; they go through the same events a plugin's callback gets.
"""
