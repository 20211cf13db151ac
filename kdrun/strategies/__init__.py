"""Ways of training, picked by `strategy=`: each is one module here that registers its class
(kdrun.strategies.base.register). kdrun.strategies.catalog imports them all."""
