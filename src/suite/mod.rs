//! Policy test suites: requests with the decisions expected of them, run against a policy set.
