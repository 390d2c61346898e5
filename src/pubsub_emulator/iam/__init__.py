"""IAM: policies on topics, subscriptions, snapshots, schemas and projects, served and
enforced with Google's model (roles: the predefined and basic roles as permission sets)."""
