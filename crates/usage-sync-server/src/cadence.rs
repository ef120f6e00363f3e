//! The adaptive cadence of `SYNC_PERFORMANCE_MODE=optimized`.
//!
//! Every alert evaluation feeds the window's process CPU and average flush
//! time to the [`Controller`]. While either is high, the check and
//! heartbeat intervals double (up to ×8); once both are calm they halve
//! back, one step per evaluation. Between the two bands nothing changes,
//! so the cadence does not flap around a single threshold. The guarantee
//! interval is never stretched (the engine enforces that), and `standard`
//! mode keeps the configured intervals fixed.

/// Thresholds of the controller.
#[derive(Clone, Debug)]
pub struct Bands {
    pub cpu_high: f64,
    pub cpu_calm: f64,
    pub latency_high_ms: f64,
    pub latency_calm_ms: f64,
    pub max_multiplier: u32,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            cpu_high: 70.0,
            cpu_calm: 40.0,
            latency_high_ms: 1000.0,
            latency_calm_ms: 250.0,
            max_multiplier: 8,
        }
    }
}

/// Decides the interval multiplier from readings.
#[derive(Clone, Debug)]
pub struct Controller {
    bands: Bands,
    multiplier: u32,
}

impl Controller {
    pub fn new(bands: Bands) -> Self {
        Controller {
            bands,
            multiplier: 1,
        }
    }

    pub fn multiplier(&self) -> u32 {
        self.multiplier
    }

    /// One step: returns the new multiplier and the reason for it.
    pub fn step(&mut self, cpu_percent: f64, avg_flush_ms: f64) -> (u32, String) {
        let b = &self.bands;
        if cpu_percent > b.cpu_high || avg_flush_ms > b.latency_high_ms {
            self.multiplier = (self.multiplier * 2).min(b.max_multiplier);
            let why = if cpu_percent > b.cpu_high {
                format!("cpu {cpu_percent:.0} % > {:.0} %", b.cpu_high)
            } else {
                format!(
                    "store latency {avg_flush_ms:.0} ms > {:.0} ms",
                    b.latency_high_ms
                )
            };
            (self.multiplier, format!("stretched: {why}"))
        } else if cpu_percent < b.cpu_calm && avg_flush_ms < b.latency_calm_ms {
            self.multiplier = (self.multiplier / 2).max(1);
            let why = if self.multiplier == 1 {
                "as configured (calm)"
            } else {
                "returning: calm"
            };
            (self.multiplier, why.to_owned())
        } else {
            (self.multiplier, "holding: between the bands".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_while_cpu_is_high_up_to_the_cap_then_returns_when_calm() {
        let mut c = Controller::new(Bands::default());
        let steps: Vec<u32> = [90.0, 90.0, 90.0, 90.0, 90.0]
            .iter()
            .map(|&cpu| c.step(cpu, 10.0).0)
            .collect();
        assert_eq!(steps, vec![2, 4, 8, 8, 8]);
        let (m, why) = c.step(95.0, 10.0);
        assert_eq!((m, why.as_str()), (8, "stretched: cpu 95 % > 70 %"));
        // Between the bands: hold.
        assert_eq!(c.step(55.0, 10.0).0, 8);
        // Calm: halve back, step by step.
        let back: Vec<u32> = (0..4).map(|_| c.step(10.0, 10.0).0).collect();
        assert_eq!(back, vec![4, 2, 1, 1]);
        assert_eq!(c.step(10.0, 10.0).1, "as configured (calm)");
    }

    #[test]
    fn store_latency_stretches_too_and_both_must_be_calm_to_return() {
        let mut c = Controller::new(Bands::default());
        let (m, why) = c.step(5.0, 1500.0);
        assert_eq!(
            (m, why.as_str()),
            (2, "stretched: store latency 1500 ms > 1000 ms")
        );
        // CPU calm but latency only between the bands: hold.
        assert_eq!(c.step(5.0, 500.0).0, 2);
        assert_eq!(c.step(5.0, 100.0).0, 1);
    }
}
