"""The read side for people and programs: views by audience, the REST API, page queries,
URLs, middleware. May import every package before it; none of them imports it."""
