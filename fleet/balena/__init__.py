"""balena fleets: map balena devices (type, tags) onto edgefleet settings and write them through balena-sdk."""
