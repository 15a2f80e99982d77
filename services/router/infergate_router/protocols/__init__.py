"""One module per public protocol, all alike: request/response models,
a blueprint, and the function that renders errors in the protocol's shape."""
