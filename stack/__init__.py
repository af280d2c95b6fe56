"""The reference checkout system that chaoscheckout is proven against (not library API)."""
