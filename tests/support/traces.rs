//! Every `tracing` event and span a test's subscriber sees, at TRACE level, as text: the
//! secrets tests search it.

use std::{
    fmt::Write,
    sync::{Arc, Mutex},
};

/// A `tracing_subscriber` layer that keeps each span's name and fields and each event's
/// target, message and fields as one line of text.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    /// What was captured so far.
    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Visitor(String);

impl tracing::field::Visit for Visitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut visitor = Visitor(format!("span {} ", attrs.metadata().name()));
        attrs.record(&mut visitor);
        self.0.lock().unwrap().push(visitor.0);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut visitor = Visitor(format!("{} ", event.metadata().target()));
        event.record(&mut visitor);
        self.0.lock().unwrap().push(visitor.0);
    }
}
