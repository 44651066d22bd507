"""What operators touch: the edgefleet CLI."""
