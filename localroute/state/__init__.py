"""What gateway replicas share: in this process by default, in Redis or Valkey with `[state] url`."""
