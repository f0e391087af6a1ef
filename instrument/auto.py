"""``import instrument.auto``: initialise the toolkit from the environment, as a side effect of import."""

from instrument import init

init()
